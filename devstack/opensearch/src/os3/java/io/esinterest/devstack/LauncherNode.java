package io.esinterest.devstack;

import org.opensearch.Version;
import org.opensearch.env.Environment;
import org.opensearch.node.Node;
import org.opensearch.plugins.PluginInfo;
import org.opensearch.transport.Netty4ModulePlugin;

import java.util.List;

/** OpenSearch 3.x: the node takes its classpath plugins (netty4 HTTP) as descriptors. */
final class LauncherNode extends Node {
    private static final List<PluginInfo> PLUGINS = List.of(
        new PluginInfo(
            "transport-netty4",
            "netty4 transport and HTTP from the classpath",
            Version.CURRENT.toString(),
            Version.CURRENT,
            "21",
            Netty4ModulePlugin.class.getName(),
            List.of(),
            false
        )
    );

    LauncherNode(Environment environment) {
        super(environment, PLUGINS, true);
    }
}
