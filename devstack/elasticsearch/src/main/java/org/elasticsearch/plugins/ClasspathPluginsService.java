package org.elasticsearch.plugins;

import org.elasticsearch.Version;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;

/**
 * Loads plugins from the JVM classpath instead of a distribution's modules/ folder.
 *
 * <p>Maven Central ships Elasticsearch's server and some modules as plain jars, not as an
 * installed distribution, so the plugins are instantiated directly. It lives in this package
 * because {@code PluginsService.LoadedPlugin} is package-private (the ES test framework's
 * MockPluginsService does the same).
 */
public final class ClasspathPluginsService extends PluginsService {
    private final List<LoadedPlugin> classpathPlugins;

    public ClasspathPluginsService(Settings settings, Environment environment, Collection<Class<? extends Plugin>> pluginClasses) {
        super(settings, environment.configFile(), environment.modulesFile(), environment.pluginsFile());
        List<LoadedPlugin> loaded = new ArrayList<>();
        for (Class<? extends Plugin> pluginClass : pluginClasses) {
            Plugin instance = loadPlugin(pluginClass, settings, environment.configFile());
            PluginDescriptor descriptor = new PluginDescriptor(
                pluginClass.getName(), "classpath plugin", "NA", Version.CURRENT, "17",
                pluginClass.getName(), null, List.of(), false, false, false, false);
            loaded.add(new LoadedPlugin(descriptor, instance, pluginClass.getClassLoader(), ModuleLayer.boot()));
        }
        loadExtensions(loaded);
        this.classpathPlugins = List.copyOf(loaded);
    }

    @Override
    protected List<LoadedPlugin> plugins() {
        return classpathPlugins;
    }
}
