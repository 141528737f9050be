package io.esinterest.devstack.linear;

import org.apache.lucene.search.ScoreDoc;
import org.elasticsearch.common.ParsingException;
import org.elasticsearch.index.query.QueryBuilder;
import org.elasticsearch.search.rank.RankDoc;
import org.elasticsearch.search.retriever.CompoundRetrieverBuilder;
import org.elasticsearch.search.retriever.RetrieverBuilder;
import org.elasticsearch.search.retriever.RetrieverParserContext;
import org.elasticsearch.xcontent.XContentBuilder;
import org.elasticsearch.xcontent.XContentParser;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * A weighted sum of its child retrievers' scores, each optionally min-max normalized over the
 * child's top {@code rank_window_size} hits:
 *
 * <pre>
 * {"linear": {"retrievers": [{"retriever": {...}, "weight": 2.0, "normalizer": "minmax"}, ...],
 *             "rank_window_size": 100, "normalizer": "none"}}
 * </pre>
 *
 * A document missing from a child's window gets 0 from that child. {@code minmax} maps a child's
 * scores to (s - min) / (max - min); when every score in the window is equal they all become 1.
 * The top-level {@code normalizer} is the default for children that name none.
 */
public final class LinearRetrieverBuilder extends CompoundRetrieverBuilder<LinearRetrieverBuilder> {
    public static final String NAME = "linear";
    static final int DEFAULT_RANK_WINDOW_SIZE = 10;

    enum Normalizer {
        NONE, MINMAX;

        static Normalizer parse(XContentParser parser) throws IOException {
            String text = parser.text();
            return switch (text) {
                case "none" -> NONE;
                case "minmax" -> MINMAX;
                default -> throw new ParsingException(parser.getTokenLocation(),
                    "[linear] unknown normalizer [" + text + "]; expected [none] or [minmax]");
            };
        }

        String text() {
            return name().toLowerCase(java.util.Locale.ROOT);
        }
    }

    private final float[] weights;
    private final Normalizer[] normalizers;

    LinearRetrieverBuilder(List<RetrieverSource> children, int rankWindowSize, float[] weights, Normalizer[] normalizers) {
        super(children, rankWindowSize);
        this.weights = weights;
        this.normalizers = normalizers;
    }

    /** Parses the body of {@code "linear": {...}} (the parser stands on its START_OBJECT). */
    public static LinearRetrieverBuilder fromXContent(XContentParser parser, RetrieverParserContext context) throws IOException {
        List<RetrieverSource> children = new ArrayList<>();
        List<Float> weights = new ArrayList<>();
        List<Normalizer> normalizers = new ArrayList<>();
        int rankWindowSize = DEFAULT_RANK_WINDOW_SIZE;
        Normalizer defaultNormalizer = Normalizer.NONE;
        String field = null;
        XContentParser.Token token;
        while ((token = parser.nextToken()) != XContentParser.Token.END_OBJECT) {
            if (token == XContentParser.Token.FIELD_NAME) {
                field = parser.currentName();
                continue;
            }
            switch (Objects.requireNonNull(field)) {
                case "rank_window_size" -> rankWindowSize = parser.intValue();
                case "normalizer" -> defaultNormalizer = Normalizer.parse(parser);
                case "retrievers" -> {
                    expect(parser, token, XContentParser.Token.START_ARRAY, "retrievers");
                    while (parser.nextToken() != XContentParser.Token.END_ARRAY) {
                        parseChild(parser, context, children, weights, normalizers);
                    }
                }
                default -> throw new ParsingException(parser.getTokenLocation(), "[linear] unknown field [" + field + "]");
            }
        }
        if (children.isEmpty()) {
            throw new ParsingException(parser.getTokenLocation(), "[linear] needs at least one entry in [retrievers]");
        }
        if (rankWindowSize < 1) {
            throw new ParsingException(parser.getTokenLocation(), "[linear] [rank_window_size] must be at least 1");
        }
        float[] w = new float[weights.size()];
        Normalizer[] n = new Normalizer[normalizers.size()];
        for (int i = 0; i < w.length; i++) {
            w[i] = weights.get(i);
            n[i] = normalizers.get(i) == null ? defaultNormalizer : normalizers.get(i);
        }
        return new LinearRetrieverBuilder(children, rankWindowSize, w, n);
    }

    /** One {@code {"retriever": {...}, "weight": w, "normalizer": n}} entry. */
    private static void parseChild(XContentParser parser, RetrieverParserContext context, List<RetrieverSource> children,
                                   List<Float> weights, List<Normalizer> normalizers) throws IOException {
        expect(parser, parser.currentToken(), XContentParser.Token.START_OBJECT, "retrievers");
        RetrieverBuilder child = null;
        float weight = 1.0f;
        Normalizer normalizer = null;
        String field = null;
        XContentParser.Token token;
        while ((token = parser.nextToken()) != XContentParser.Token.END_OBJECT) {
            if (token == XContentParser.Token.FIELD_NAME) {
                field = parser.currentName();
                continue;
            }
            switch (Objects.requireNonNull(field)) {
                case "retriever" -> child = parseInnerRetrieverBuilder(parser, context);
                case "weight" -> {
                    weight = parser.floatValue();
                    if (weight < 0 || Float.isFinite(weight) == false) {
                        throw new ParsingException(parser.getTokenLocation(), "[linear] [weight] must be finite and >= 0");
                    }
                }
                case "normalizer" -> normalizer = Normalizer.parse(parser);
                default -> throw new ParsingException(parser.getTokenLocation(),
                    "[linear] unknown field [" + field + "] in a [retrievers] entry");
            }
        }
        if (child == null) {
            throw new ParsingException(parser.getTokenLocation(), "[linear] every [retrievers] entry needs a [retriever]");
        }
        children.add(RetrieverSource.from(child));
        weights.add(weight);
        normalizers.add(normalizer);
    }

    private static void expect(XContentParser parser, XContentParser.Token actual, XContentParser.Token wanted, String field)
        throws ParsingException {
        if (actual != wanted) {
            throw new ParsingException(parser.getTokenLocation(), "[linear] [" + field + "] expected " + wanted + " but found " + actual);
        }
    }

    @Override
    public String getName() {
        return NAME;
    }

    @Override
    protected LinearRetrieverBuilder clone(List<RetrieverSource> children, List<QueryBuilder> preFilters) {
        LinearRetrieverBuilder copy = new LinearRetrieverBuilder(children, rankWindowSize, weights, normalizers);
        copy.preFilterQueryBuilders = preFilters;
        copy.retrieverName = retrieverName;
        return copy;
    }

    @Override
    protected RankDoc[] combineInnerRetrieverResults(List<ScoreDoc[]> results, boolean explain) {
        Map<Long, RankDoc> combined = new HashMap<>();
        for (int child = 0; child < results.size(); child++) {
            ScoreDoc[] hits = results.get(child);
            if (hits.length == 0) {
                continue;
            }
            float min = Float.POSITIVE_INFINITY;
            float max = Float.NEGATIVE_INFINITY;
            for (ScoreDoc hit : hits) {
                min = Math.min(min, hit.score);
                max = Math.max(max, hit.score);
            }
            for (ScoreDoc hit : hits) {
                float score = hit.score;
                if (normalizers[child] == Normalizer.MINMAX) {
                    score = max > min ? (score - min) / (max - min) : 1.0f;
                }
                long key = ((long) hit.shardIndex << 32) | (hit.doc & 0xffffffffL);
                RankDoc doc = combined.computeIfAbsent(key, k -> new RankDoc(hit.doc, 0f, hit.shardIndex));
                doc.score += weights[child] * score;
            }
        }
        RankDoc[] ranked = combined.values().toArray(RankDoc[]::new);
        Arrays.sort(ranked, Comparator.<RankDoc>comparingDouble(d -> -d.score)
            .thenComparingInt(d -> d.shardIndex).thenComparingInt(d -> d.doc));
        ranked = Arrays.copyOf(ranked, Math.min(ranked.length, rankWindowSize));
        for (int i = 0; i < ranked.length; i++) {
            ranked[i].rank = i + 1;
        }
        return ranked;
    }

    @Override
    protected void doToXContent(XContentBuilder builder, Params params) throws IOException {
        builder.startArray("retrievers");
        for (int i = 0; i < innerRetrievers.size(); i++) {
            builder.startObject();
            builder.field("retriever", innerRetrievers.get(i).retriever());
            builder.field("weight", weights[i]);
            builder.field("normalizer", normalizers[i].text());
            builder.endObject();
        }
        builder.endArray();
        builder.field("rank_window_size", rankWindowSize);
    }

    @Override
    public boolean doEquals(Object other) {
        LinearRetrieverBuilder that = (LinearRetrieverBuilder) other;
        return super.doEquals(other) && Arrays.equals(weights, that.weights) && Arrays.equals(normalizers, that.normalizers);
    }

    @Override
    public int doHashCode() {
        return Objects.hash(super.doHashCode(), Arrays.hashCode(weights), Arrays.hashCode(normalizers));
    }
}
