package io.esinterest.devstack.linear;

import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.SearchPlugin;

import java.util.List;

/**
 * The {@code linear} retriever for the dev node. Elastic's own (8.18+) lives in the x-pack
 * {@code rank-rrf} module, which is not on Maven Central; this is the project's implementation of
 * the documented request syntax, so the product's {@code linear_retriever} strategy runs here.
 */
public final class LinearRetrieverPlugin extends Plugin implements SearchPlugin {
    @Override
    public List<RetrieverSpec<?>> getRetrievers() {
        return List.of(new RetrieverSpec<>(LinearRetrieverBuilder.NAME, LinearRetrieverBuilder::fromXContent));
    }
}
