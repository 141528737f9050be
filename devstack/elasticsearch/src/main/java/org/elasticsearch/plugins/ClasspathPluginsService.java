package org.elasticsearch.plugins;

import org.elasticsearch.action.admin.cluster.node.info.PluginsAndModules;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Loads plugins from the JVM classpath instead of a distribution's modules/ folder.
 * It lives in this package because {@code PluginsService.LoadedPlugin} is package-private.
 */
public final class ClasspathPluginsService extends PluginsService {
    /** A plugin class and the name it reports in _nodes/plugins. */
    public record Entry(String name, Class<? extends Plugin> pluginClass) {}

    private final List<LoadedPlugin> classpathPlugins;

    public ClasspathPluginsService(Settings settings, Environment environment, List<Entry> entries) {
        super(settings, environment.configDir(), PluginsLoader.createPluginsLoader(Set.of(), Set.of(), Map.of(), false));
        List<LoadedPlugin> loaded = new ArrayList<>();
        for (Entry entry : entries) {
            Plugin instance = loadPlugin(entry.pluginClass(), settings, environment.configDir());
            PluginDescriptor descriptor = ClasspathDescriptors.of(entry.name(), entry.pluginClass());
            loaded.add(new LoadedPlugin(descriptor, instance, entry.pluginClass().getClassLoader()));
        }
        loadExtensions(loaded);
        this.classpathPlugins = List.copyOf(loaded);
    }

    @Override
    protected List<LoadedPlugin> plugins() {
        return classpathPlugins;
    }

    /** Reports the classpath plugins as modules in _nodes/plugins, as a distribution's modules/ would be. */
    @Override
    public PluginsAndModules info() {
        return new PluginsAndModules(List.of(), classpathPlugins.stream().map(LoadedPlugin::descriptor).toList());
    }
}
