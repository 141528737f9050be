package io.esinterest.devstack;

import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.plugins.ActionPlugin;
import org.elasticsearch.plugins.Plugin;

import java.util.Collection;
import java.util.List;

/** Keeps the cluster service for {@link RootInfoHandler}; each server line registers it. */
abstract class RootInfoPluginBase extends Plugin implements ActionPlugin {
    private volatile ClusterService clusterService;

    @Override
    public Collection<?> createComponents(PluginServices services) {
        clusterService = services.clusterService();
        return List.of();
    }

    final RootInfoHandler handler() {
        return new RootInfoHandler(() -> clusterService);
    }
}
