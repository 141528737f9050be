package io.esinterest.devstack;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.Node;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CountDownLatch;

/**
 * Starts one OpenSearch node ({@link LauncherNode}, one per server line) in this JVM: netty4 HTTP
 * from the classpath; Painless,
 * analysis-common and k-NN (Lucene engine) as modules from {@code INSTALL_DIR/modules}, since
 * only modules can extend each other (both add functions to Painless).
 *
 * <p>Usage: {@code OpenSearchNode INSTALL_DIR DATA_DIR HTTP_PORT TRANSPORT_PORT}. Runs until the
 * process receives SIGTERM, then closes the node cleanly.
 */
public final class OpenSearchNode {
    private OpenSearchNode() {}

    public static void main(String[] args) throws Exception {
        Path install = Path.of(args[0]).toAbsolutePath();
        Path data = Path.of(args[1]).toAbsolutePath();
        for (Path dir : List.of(install.resolve("plugins"), data.resolve("config"), data.resolve("data"), data.resolve("logs"))) {
            Files.createDirectories(dir);
        }
        Settings settings = Settings.builder()
            .put("path.home", install.toString())
            .put("path.data", data.resolve("data").toString())
            .put("path.logs", data.resolve("logs").toString())
            .put("cluster.name", "es-interest-dev")
            .put("node.name", "es-interest-os")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", args[2])
            .put("transport.port", args[3])
            // A dev node on a shared disk: don't turn read-only when the disk is nearly full.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("action.destructive_requires_name", false)
            .build();
        LogConfigurator.registerErrorListener();
        LogConfigurator.configureWithoutConfig(settings);
        Node node = new LauncherNode(new Environment(settings, data.resolve("config")));
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
        System.out.println("opensearch started on 127.0.0.1:" + args[2]);
        stopped.await();
    }
}
