package io.esinterest.devstack;

import org.opensearch.env.Environment;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

import java.util.List;

/** OpenSearch 2.x: the node takes its classpath plugins (netty4 HTTP) as classes. */
final class LauncherNode extends Node {
    private static final List<Class<? extends Plugin>> PLUGINS = List.of(Netty4Plugin.class);

    LauncherNode(Environment environment) {
        super(environment, PLUGINS, true);
    }
}
