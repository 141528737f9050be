package org.elasticsearch.plugins;

import org.elasticsearch.Build;

import java.util.List;

/** The descriptor a classpath plugin reports (9.x: the constructor differs between lines). */
final class ClasspathDescriptors {
    private ClasspathDescriptors() {}

    static PluginDescriptor of(String name, Class<? extends Plugin> pluginClass) {
        return new PluginDescriptor(name, "classpath plugin " + pluginClass.getName(), Build.current().version(),
            Build.current().version(), "21", pluginClass.getName(), null, List.of(), false, false, false, false,
            PluginDescriptor.DeploymentTarget.ALL);
    }
}
