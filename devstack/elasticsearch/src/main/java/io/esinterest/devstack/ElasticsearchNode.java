package io.esinterest.devstack;

import io.esinterest.devstack.linear.LinearRetrieverPlugin;
import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.ClasspathNode;
import org.elasticsearch.node.Node;
import org.elasticsearch.plugins.ClasspathPluginsService.Entry;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.transport.netty4.Netty4Plugin;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;

/**
 * Starts one Elasticsearch node in this JVM with plugins loaded from the classpath.
 *
 * <p>Usage: {@code ElasticsearchNode INSTALL_DIR DATA_DIR HTTP_PORT TRANSPORT_PORT [NAME=CLASS ...]};
 * each {@code NAME=CLASS} adds a plugin found on the classpath (Painless, when its jar is there).
 * Runs until SIGTERM, then closes the node cleanly.
 */
public final class ElasticsearchNode {
    private ElasticsearchNode() {}

    @SuppressWarnings("unchecked")
    public static void main(String[] args) throws Exception {
        Path install = Path.of(args[0]).toAbsolutePath();
        Path data = Path.of(args[1]).toAbsolutePath();
        for (Path dir : List.of(install.resolve("modules"), install.resolve("plugins"), data.resolve("config"),
                                data.resolve("data"), data.resolve("logs"))) {
            Files.createDirectories(dir);
        }
        List<Entry> plugins = new ArrayList<>();
        plugins.add(new Entry("transport-netty4", Netty4Plugin.class));
        plugins.add(new Entry("devstack-root", RootInfoPlugin.class));
        plugins.add(new Entry("devstack-linear-retriever", LinearRetrieverPlugin.class));
        for (int i = 4; i < args.length; i++) {
            String[] nameAndClass = args[i].split("=", 2);
            plugins.add(new Entry(nameAndClass[0], (Class<? extends Plugin>) Class.forName(nameAndClass[1])));
        }
        // A node of a multi-node cluster (`make up-cluster`) names its peers; otherwise it is
        // a cluster of its own.
        String seeds = System.getenv("DEVSTACK_SEED_HOSTS");
        Settings.Builder builder = Settings.builder()
            .put("path.home", install.toString())
            .put("path.data", data.resolve("data").toString())
            .put("path.logs", data.resolve("logs").toString())
            .put("cluster.name", System.getenv().getOrDefault("DEVSTACK_CLUSTER_NAME", "es-interest-dev"))
            .put("node.name", System.getenv().getOrDefault("DEVSTACK_NODE_NAME", "es-interest-es"));
        if (seeds == null || seeds.isEmpty()) {
            builder.put("discovery.type", "single-node");
        } else {
            builder.putList("discovery.seed_hosts", seeds.split(","))
                .putList("cluster.initial_master_nodes", System.getenv("DEVSTACK_MASTER_NODES").split(","));
        }
        Settings settings = builder
            .put("network.host", "127.0.0.1")
            .put("http.port", args[2])
            .put("transport.port", args[3])
            // A dev node on a shared disk: don't turn read-only when the disk is nearly full.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            // Nor stop merging (a force merge then waits forever) while gigabytes are free:
            // the engine's default keeps 5% of the whole disk free for merges.
            .put("indices.merge.disk.watermark.high", "1gb")
            .put("action.destructive_requires_name", false)
            .build();
        LogConfigurator.configureESLogging();
        LogConfigurator.configureWithoutConfig(settings);
        Environment environment = new Environment(settings, data.resolve("config"));
        Node node = new ClasspathNode(environment, plugins);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }));
        node.start();
        System.out.println("elasticsearch " + org.elasticsearch.Build.current().qualifiedVersion()
            + " started on 127.0.0.1:" + args[2]);
        stopped.await();
    }
}
