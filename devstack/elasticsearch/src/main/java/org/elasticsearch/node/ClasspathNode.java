package org.elasticsearch.node;

import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.ClasspathPluginsService;
import org.elasticsearch.plugins.PluginsLoader;
import org.elasticsearch.plugins.PluginsService;

import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A Node whose plugins come from the classpath. It sits in org.elasticsearch.node because
 * NodeConstruction, NodeServiceProvider and Node(NodeConstruction) are package-private (8.19, 9.x).
 */
public class ClasspathNode extends Node {
    public ClasspathNode(Environment environment, List<ClasspathPluginsService.Entry> plugins) {
        super(NodeConstruction.prepareConstruction(
            environment,
            PluginsLoader.createPluginsLoader(Set.of(), Set.of(), Map.of(), false),
            new NodeServiceProvider() {
                @Override
                PluginsService newPluginService(Environment env, PluginsLoader loader) {
                    return new ClasspathPluginsService(env.settings(), env, plugins);
                }
            },
            true));
    }
}
