"""docs/evaluation.md and its plots, from the results of one run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import matplotlib

from plugin.config import PLACED_POLICIES, WEIGHT_NAMES
from plugin.evaluation.data import DISCOVERY, PROTOCOLS
from plugin.strategies import SEEN_FEW

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Relative NDCG@10 gains the personalized default aims at (discovery protocols): over the
# comparator (the best non-personalized arm), over the item-prior control, on tail targets.
GOAL, CONTROL_GOAL, TAIL_GOAL = 0.50, 0.10, 0.10


def _plots(results: dict[str, Any], out_dir: Path) -> None:
    _plot_methods(results, out_dir)
    _plot_half_lives(results, out_dir)
    _plot_drift(results, out_dir)


def _plot_methods(results: dict[str, Any], out_dir: Path) -> None:
    first = next(iter(results["engines"].values()))
    strategy = first["strategies"][0]
    protocols = list(first["protocols"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(protocols))
    for n, protocol in enumerate(protocols):
        methods = first["protocols"][protocol]["methods"]
        names = [m for m in methods if methods[m]["strategy"] in ("-", strategy)]
        means = [methods[m]["ndcg@10"]["mean"] for m in names]
        cis = [methods[m]["ndcg@10"]["ci95"] for m in names]
        low = [mean - ci[0] for mean, ci in zip(means, cis, strict=True)]
        high = [ci[1] - mean for mean, ci in zip(means, cis, strict=True)]
        xs = [i + n * width for i in range(len(names))]
        ax.bar(xs, means, width, yerr=[low, high], capsize=3, label=f"{protocol} queries")
        ax.set_xticks([i + width * (len(protocols) - 1) / 2 for i in range(len(names))])
        ax.set_xticklabels([m.replace(f" ({strategy})", "") for m in names], rotation=20,
                           ha="right", fontsize=8)
    ax.set_ylabel("NDCG@10 (test, 95% CI)")
    ax.set_title(f"NDCG@10 by method: {first['engine']}, {strategy}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "ndcg_by_method.png", dpi=110)
    plt.close(fig)


def _plot_half_lives(results: dict[str, Any], out_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ab = results["ablation"]
    ax.plot([a["long_days"] for a in ab], [a["val_ndcg@10"] for a in ab], marker="o")
    for a in ab:
        ax.annotate(f"short {a['short_days']:g} d", (a["long_days"], a["val_ndcg@10"]),
                    fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("long-term half-life (days)")
    ax.set_ylabel("NDCG@10 (validation)")
    ax.set_title("Dynamic profile against half-life")
    fig.tight_layout()
    fig.savefig(out_dir / "ndcg_vs_half_life.png", dpi=110)
    plt.close(fig)


def _plot_drift(results: dict[str, Any], out_dir: Path) -> None:
    drift = results["drift_user"]
    times: list[Any] = [dt.datetime.fromtimestamp(t, tz=dt.UTC) for t in drift["t"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(times, drift["long"], label="long-term vector", lw=1)
    ax.plot(times, drift["short"], label="short-term vector", lw=0.6, alpha=0.7)
    ax.set_ylabel("cosine to the final long-term vector")
    ax.set_title(f"Interest drift of user {drift['user']} ({drift['events']} events)")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out_dir / "interest_drift.png", dpi=110)
    plt.close(fig)


def _fmt(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{entry['mean']:.4f} [{low:.4f}, {high:.4f}]"


def _p(test: dict[str, float]) -> str:
    return f"{test['mean_diff']:+.4f} (p {test['p_bootstrap']:.3g} / {test['p_wilcoxon']:.3g})"


def _setting_change(pair: str) -> str:
    """"a > b" of two candidates' labels ("key value, key value") as what differs: "model
    ppmi_svd over model als", "als_regularization 0.5 over als_regularization 2.0"."""
    challenger, held = (dict(item.split(" ", 1) for item in label.split(", "))
                        for label in pair.split(" > "))
    changed = [k for k in challenger if challenger[k] != held.get(k)]
    return ", ".join(f"{k} {challenger[k]}" for k in changed) + " over " + ", ".join(
        f"{k} {held[k]}" for k in changed if k in held)


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """docs/evaluation.md (or the quick run's copy) and its plots, one section at a time."""
    _plots(results, out_dir)
    lines = [*_protocol(results), *_configuration(results["ranking"]),
             *_strategy_order(results), *_offline_agreement(results),
             *_seen_policy(results)]
    for res in results["engines"].values():
        lines += _engine_results(res)
    lines += _ablations(results)
    path = out_dir / "evaluation.md"
    path.write_text("\n".join(lines))
    return path


def _protocol(results: dict[str, Any]) -> list[str]:
    command = "make eval-quick" if results["quick"] else "make eval"
    return [
        "# Evaluation: does personalization beat the best ranking without it?",
        "",
        f"Generated by `{command}` (`es-interest eval{' --quick' if results['quick'] else ''}`)"
        f" on commit `{results['commit']}` in {results['seconds']:.0f} s. Data: MovieLens "
        "ml-latest-small (GroupLens; research licence in `data/movielens-small/README.txt`).",
        "",
        "## In plain words",
        "",
        "- **The comparator** is the best ranking the product can give *without* a user on "
        "that engine: BM25, BM25 + popularity, or the non-personalized default (BM25 + query "
        "vector + popularity) of any strategy the engine offers, whichever scores best on each "
        "protocol's validation queries. Every gain below is against it.",
        "- **The controls** ask whether a gain is the user's own: the same request with the "
        "user's vectors replaced by the mean user's (an item prior: what most people like), "
        "or by another user's. The user's own seen documents stay, so the controls differ "
        "from the personalized default in the vectors only.",
        "- **Seen documents**: with the `neutral` policy the personal terms give documents "
        "the user already liked the ranking file's `seen` share of their weight instead of "
        "their own (high) similarity, so the boost goes to what the user has not seen; "
        "`keep` gives them no boost and exactly their place in the same search without the "
        "user; `floor` gives them `neutral`'s share and never a place below that one; `own` "
        "boosts them like any other document.",
        "",
        "## Protocol",
        "",
        f"- {results['users']} users, {results['movies']} movies (title, genres and users' tags"
        " as text), embedded with all-MiniLM-L6-v2.",
        "- Per user, in time: the first 80% of ratings are training, the next 10% validation, "
        "the last 10% test. Ratings of 4 and above are likes (weight rating - 3), 2 and below "
        "dislikes (weight rating - 3), the rest are left out; tags are comment events "
        "carrying the tag's text.",
        f"- Training events ({results['train_events']}) are replayed in time order through the"
        " real event pipeline (`pipeline.ingest_events`: users' interests and documents' "
        "popularity); behaviour vectors are then trained (`es-interest train`); the search "
        "runs through the real search layer (`plugin.search.search`) on each engine.",
        "- **Profiles are current at query time**: each query's profile folds every event "
        "of the user before it (for a test query, the validation period's too), with the "
        "workers' own fold, as the service would hold it. (The pipeline's replay is checked "
        "against the same fold.) **Dynamic vs static** compares the personalized default "
        "with the same blend on each user's profile *frozen* when training ended (the same "
        "fold, every term, the validation period and the test's earlier events left out): "
        "what keeping the profile current is worth. The static content profile (an "
        "ablation) is the mean of the training history, computed once.",
        "- Three query protocols, reported separately. Discovery (the target is new to the "
        "user): **term**, one genre or tag of a held-out liked movie; **words**, two of "
        "them; none shares a word with its title. Re-finding: **refind**, a movie the user "
        "liked in training, asked at a validation or test time by one of its terms or, for "
        "the movies with an odd id (about half), by its title's longest word (a known-item "
        "search: no stopword, number or year)."
        f" The measure is the rank of the target among the top {100}. Validation: "
        f"{results['validation_queries']} queries ({results['tuning_queries']} sampled for "
        f"tuning the strategies scored through the engine, evenly over the protocols; "
        f"{_offline_names(results) or 'none'} tune on all of them, offline: below); test: "
        f"{results['test_queries']}.",
        "- Every weight, half-life, policy and the comparator were chosen on validation only "
        "(the first engine tunes; the other engines run the same weights, as the product ships"
        " one configuration); the test slice was used once, for the tables below.",
        "- Tail targets: movies fewer than 3 users interacted with in training.",
        "- Documents' popularity and behaviour vectors are trained on every user's training "
        "events, some of which postdate a given test query; the leak bound measures what "
        "that is worth (popularity and behaviour from the past only).",
        "- 95% intervals: bootstrap over queries (2,000 resamples). Tests: paired bootstrap "
        "(one-sided) and Wilcoxon signed-rank on per-query NDCG@10, shown as "
        "`difference (p bootstrap / p Wilcoxon)`. Every arm's per-query ranks are in "
        "`evaluation.json` (`per_query`).",
        "",
    ]


def _configuration(ranking: dict[str, Any]) -> list[str]:
    lines = [
        "## The configuration chosen (shipped in `plugin/ranking.json`)",
        "",
        "`ambiguity`: the user terms are scaled by words^-ambiguity (the query's distinct "
        "words): a longer, more specific query turns personalization down. `seen`: the share "
        "of the user terms' total weight a document the user already liked gets in place of "
        "its own personal terms; `seen_crowding`: for a user with n seen documents beyond "
        f"{SEEN_FEW}, that share is scaled by (n / {SEEN_FEW})^-seen_crowding (a user who knows "
        "many documents has many among any query's matches, each taking a place a new one "
        "could have). Each table is tuned term by term on validation: the "
        "query vector and popularity without a user (the non-personalized default, which a "
        "search without a user runs: the table without a behaviour vector keeps them), then "
        "the user terms; beside behaviour the query vector and popularity are tuned again, "
        "so a user with a behaviour vector may get them weighed differently.",
        "",
        f"Half-lives: interests long {ranking['half_life_long_days']:g} d, short "
        f"{ranking['half_life_short_days']:.4g} d ({ranking['half_life_short_days'] * 1440:.4g} "
        "min); popularity "
        f"{ranking['popularity_half_life_days']:g} d (0 = no decay). Seen policy: "
        f"`{ranking.get('seen_policy', 'neutral')}`.",
        "",
        "| strategy | " + " | ".join(WEIGHT_NAMES) + " |",
        "| --- |" + " --- |" * len(WEIGHT_NAMES),
    ]
    for table, label in (("weights", ""), ("weights_without_behaviour",
                                           " (users without a behaviour vector)")):
        for strategy, weights in ranking[table].items():
            lines.append(f"| {strategy}{label} | "
                         + " | ".join(f"{weights.get(t, 0.0):g}" for t in WEIGHT_NAMES) + " |")
    lines.append("")
    return lines


def _offline_names(results: dict[str, Any]) -> str:
    names = [f"`{s}`" for s in results.get("offline_agreement") or {}]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def _offline_agreement(results: dict[str, Any]) -> list[str]:
    agreements = results.get("offline_agreement") or {}
    if not agreements:
        return []
    queries = next(iter(agreements.values()))["queries"]
    lines = [
        f"{_offline_names(results)} are tuned offline: each validation query's terms are "
        "fetched once (each term's search on its own: `linear_retriever`'s retrievers over "
        "the window, `knn_linear`'s and `script_score`'s words over every match, "
        "`script_score`'s content terms (its script, one weight at a time) on every match, "
        "the kNN clauses over their k; a search asked again with the same words and vector "
        "is not sent again, and the user terms' kNN searches are scored in the evaluation's "
        "process on the documents' vectors, exactly, so a behaviour model or half-life "
        "candidate sends none of its own) and every "
        "weight candidate's blend is recomputed in the evaluation's process with the "
        "strategy's own arithmetic (`plugin/evaluation/offline_blend.py`), so tuning scores "
        f"all {queries} validation queries. Their weights on them, offline and through the "
        "engine (the rest of the ranks: ties and the kNN search's approximation); every "
        "figure below comes from the engine:", "",
        "| strategy | weights | NDCG@10 offline | NDCG@10 engine | same rank |",
        "| --- | --- | --- | --- | --- |"]
    lines += [f"| {s} | {a.get('weights', 'tuned')} | {a['offline_ndcg@10']:.4f} | "
              f"{a['engine_ndcg@10']:.4f} | {a['same_rank']:.1%} |"
              for s, a in agreements.items()]
    return [*lines, ""]


def _strategy_order(results: dict[str, Any]) -> list[str]:
    choice = results.get("strategy_choice") or {}
    validation = choice.get("validation") or {}
    if not validation:
        return []
    lines = ["`auto` (the default strategy) takes the first of these the engine offers: "
             + ", ".join(f"`{s}` {validation[s]:.4f}" for s in choice["order"]
                         if s in validation)
             + " (each personalized default's validation objective, the seen policy's below)."]
    overtakes = choice.get("overtakes")
    if overtakes is not None:
        confidence, resamples = choice.get("confidence", 0.95), choice.get("resamples", 2000)
        lines += ["The order starts from the shipped one (the ranking file's), and a strategy "
                  "moves ahead of the one before it only where its objective is the better in "
                  f"at least {confidence:.0%} of {resamples} bootstrap resamples of "
                  "the validation queries, so near ties do not swap the default on a rerun's "
                  "noise. Share of resamples in which the first beat the second: "
                  + "; ".join(f"{pair} {share:.1%}" for pair, share in overtakes.items()) + "."]
    return [*lines, ""]


def _seen_policy(results: dict[str, Any]) -> list[str]:
    seen = results.get("seen_policy") or {}
    validation = seen.get("validation") or {}
    if not validation:
        return []
    protocols = [p for p in next(iter(validation.values())) if p != "objective"]
    floors = seen.get("floors") or {}
    strategy = seen.get("strategy")
    lines = ["## Seen policy (validation NDCG@10, "
             + (f"`{strategy}`" if strategy else "the default strategy")
             + " tuned under each)", "",
             "The objective: the discovery queries' mean NDCG@10, less each protocol's "
             "shortfall below its floor, the best non-personalized ranking on it, plus "
             f"{seen.get('margin_se', 0):g} standard error(s) of the blend's own mean there "
             "(gain on what is new, no harm to any kind of query or to what the user knows, "
             "with a margin: a floor met only just on validation is missed on about half of "
             "any fresh sample). Weights "
             "are tuned on the tuning sample (`linear_retriever` and `knn_linear`: on every "
             "validation query, offline); this choice and the strategy order are made "
             "on every validation query (the policies of a strategy tuned offline compared "
             "offline, the strategies through the engine).", "",
             "| policy | objective | " + " | ".join(protocols) + " |",
             "| --- | --- |" + " --- |" * len(protocols)]
    if floors:
        lines.append("| floor (best without a user) | - | "
                     + " | ".join(f"{floors[p]:.4f}" if p in floors else "-" for p in protocols)
                     + " |")
    for policy, scores in validation.items():
        lines.append(f"| {policy} | {scores['objective']:.4f} | "
                     + " | ".join(f"{scores[p]:.4f}" for p in protocols) + " |")
    lines += ["", f"Chosen: `{seen.get('chosen')}`, the better of "
              + " and ".join(f"`{p}`" for p in PLACED_POLICIES)
              + ": what the user knows keeps its place without the user (`floor`: or "
              "better), the product's promise; the others are measured, not shipped (under "
              "`neutral` unseen documents near the user's taste can pass a known one, as on "
              "a word of its title: `docs/api_check.md`).", ""]
    return lines


def _engine_results(res: dict[str, Any]) -> list[str]:
    lines = [f"## Results on {res['engine']} (test)", ""]
    for protocol, block in res["protocols"].items():
        lines += [f"### {protocol} queries ({block['queries']})", "",
                  f"Comparator (best non-personalized on validation): "
                  f"**{block['comparator']}**.", "",
                  "| method | strategy | NDCG@10 [95% CI] | MRR [95% CI] | "
                  "Recall@100 [95% CI] |", "| --- | --- | --- | --- | --- |"]
        for name, m in block["methods"].items():
            lines.append(f"| {name} | {m['strategy']} | {_fmt(m['ndcg@10'])} | "
                         f"{_fmt(m['mrr'])} | {_fmt(m['recall@100'])} |")
        lines += ["", "| strategy | gain over the comparator | vs comparator | vs mean user "
                  "(item prior) | vs another user | dynamic vs static | vs the other seen policies "
                  "| tail targets | goals |", "| --- |" + " --- |" * 8]
        leak = res.get("leak_bound") or {}
        for strategy, t in block["tests"].items():
            past = (leak["protocols"][protocol] if leak.get("past_only_main")
                    and strategy == res["strategies"][0] else None)
            if past is not None:  # the main figures are the past-only ones
                t = {**t, **{k: past[k] for k in ("relative_gain", "vs_comparator", "harm")}}
            gain = t["relative_gain"]
            cells = [_percent(gain), _p(t["vs_comparator"])]
            for key in ("vs_item_prior", "vs_other_user", "dynamic_vs_static"):
                cells.append(_p(t[key]) if key in t else "-")
            others = t.get("vs_other_seen_policies") or {}
            cells.append("; ".join(f"{policy}: {_p(test)}" for policy, test in others.items())
                         or "-")
            tail = t.get("tail")
            cells.append("-" if tail is None else (
                f"{tail['queries']} queries: {tail['ours']:.4f} vs {tail['comparator']:.4f}"
                f" ({_percent(tail['relative_gain'])}), {_p(tail['vs_comparator'])}"))
            lines.append(f"| {strategy}{' (past only)' if past else ''} | "
                         + " | ".join(cells) + " | " + "; ".join(_goals(t, protocol)) + " |")
        lines.append("")
    lines += _leak_bound(res)
    tau = res.get("kendall_tau_script_vs_knn")
    if tau:
        lines += ["Kendall's tau between `script_score` and `knn_linear` (personalized "
                  "default, top 100, per query, mean): "
                  + ", ".join(f"{p} {v:.3f}" for p, v in tau.items()) + ".", ""]
    lines += ["Blend strategies ranked by the personalized default's NDCG@10 (mean over "
              "protocols): " + " > ".join(f"`{n}`" for n in res["strategy_ranking"]) + ".",
              f"Behaviour vectors: {res['behaviour'].get('documents', 0)} documents from "
              f"{res['behaviour'].get('pairs', 0)} positive (user, movie) pairs.",
              f"Pipeline vectors against the offline fold: max |difference| "
              f"{res['pipeline_vs_offline_max_abs']:.1e}.", ""]
    return lines


def _leak_bound(res: dict[str, Any]) -> list[str]:
    leak = res.get("leak_bound")
    if not leak:
        return []
    lines = [f"### Leak bound ({res['strategies'][0]})", "",
             "The default and the comparator again, with documents' popularity and behaviour "
             f"vectors learned only from events before the query: the test queries in "
             f"{leak['buckets']} time buckets, each learned from the events before its first "
             "query. `leak`: how many points of the main gain the later events explain.", "",
             "| protocol | main: ours vs comparator (gain) | past only: ours [95% CI] | "
             "comparator [95% CI] | gain | vs comparator | leak |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for protocol, p in leak["protocols"].items():
        lines.append(
            f"| {protocol} | {p['main_ours']:.4f} vs {p['main_comparator']:.4f} "
            f"({_percent(p['main_relative_gain'])}) | {_fmt(p['ours'])} | "
            f"{_fmt(p['comparator'])} | {_percent(p['relative_gain'])} | "
            f"{_p(p['vs_comparator'])} | "
            + ("n/a" if p["leak"] is None else f"{100 * p['leak']:+.1f} points") + " |")
    lines += ["", ("A leak exceeds " if leak["past_only_main"] else "No leak exceeds ")
              + f"{100 * leak['limit']:.0f} points: "
              + ("the past-only figures are the main ones (the goals above use them)."
                 if leak["past_only_main"] else "the main figures stand."), ""]
    return lines


def _where(report: dict[str, Any]) -> str:
    """Where the trial's model was fine-tuned."""
    device = "CPU" if report.get("device", "cpu") == "cpu" else "GPU"
    if report.get("elsewhere"):
        return f"another machine's {device} (`es-interest eval --language-model`)"
    return f"this machine's {device}"


def _language_model(results: dict[str, Any]) -> list[str]:
    trial = next((r["language_model"] for r in results["engines"].values()
                  if "language_model" in r), None)
    if not trial or "models" not in trial:
        return []
    report = trial["report"]
    lines = ["", "Language model fine-tuned on the log (`es-interest train --model`: pairs of "
             "movies one user liked close in time, MultipleNegativesRankingLoss, "
             f"{report['pairs_trained']} of {report['pairs']} pairs in {report['steps']} steps, "
             f"{report['seconds']:g} s on {_where(report)}, stopped at "
             f"{report['budget_s']:g} s if not done), against the shipped model; each "
             "re-embeds the catalogue in its own index (validation, first engine; tail: "
             f"{trial['tail_queries']} queries):", "",
             "| model | query vector | query vector, tail | content profile | "
             "content profile, tail |", "| --- | --- | --- | --- | --- |"]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for label, arms in trial["models"].items():
        lines.append(f"| {label} | " + " | ".join(
            f"{cell(arms[arm]['all'])} | {cell(arms[arm]['tail'])}"
            for arm in ("query vector", "content profile")) + " |")
    lines += ["", "The fine-tuned model " + ("wins" if trial["wins"] else "does not win")
              + " on validation (the sum of both arms, all queries)."]
    return lines


def _learned_ranker(results: dict[str, Any]) -> list[str]:
    found = next(((e, r["learned_ranker"]) for e, r in results["engines"].items()
                  if "learned_ranker" in r), None)
    if found is None:
        return []
    engine, lr = found
    title = f"## A learned ranker, measured ({engine}, `{lr['strategy']}`; not shipped)"
    if "skipped" in lr:
        return ["", title, "", f"Skipped: {lr['skipped']} (too few queries in this run)."]
    lines = ["", title,
             "", "The blend's form, linear or learned: LightGBM `lambdarank` "
             f"({lr['rounds']} trees) re-orders the linear blend's first {lr['window']} "
             "documents from each term's score in the request, the blend's score and place, "
             "the query's length, whether the user has a behaviour vector and how many "
             "documents they have seen; the user's seen documents keep their places (the seen "
             "policy's). It learns from the discovery protocols' validation queries, with the "
             "user and, as a search without a user would be ranked by a shipped ranker too, "
             "without one. Offline (the offline blend's terms, "
             "`plugin/evaluation/learned_ranker.py`): validation cross-validated over "
             f"{lr['folds']} folds of users, test with the ranker fitted on every validation "
             "query. Mean NDCG@10:", "",
             "| arm | validation term | words | refind | test term | words | refind |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for arm, val in lr["validation"].items():
        test = lr["test"][arm]
        lines.append(f"| {arm} | " + " | ".join(f"{val.get(p, 0.0):.4f}" for p in PROTOCOLS)
                     + " | " + " | ".join(f"{test.get(p, 0.0):.4f}" for p in PROTOCOLS) + " |")
    lines += ["", "Learned against linear on test, `difference (p bootstrap / p Wilcoxon)`: "
              + "; ".join(f"{who}: " + ", ".join(f"{p} {_p(t)}" for p, t in tests.items())
                          for who, tests in lr["learned_vs_linear"].items()) + ".", "",
              "Personalization's gain on test, in each form, over the same form without a "
              "user and over the better of the two forms without one (the comparator, were "
              "the learned form shipped): "
              + "; ".join(f"{arm}: " + ", ".join(
                  f"{p} {_percent(g['same_form'])} / {_percent(g['best'])}"
                  for p, g in gains.items())
                  for arm, gains in lr["personalization_gain"].items()) + "."]
    return lines


def _support(results: dict[str, Any]) -> list[str]:
    rows = results.get("behaviour_support") or []
    if not rows:
        return []
    lines = ["", "Behaviour support: the behaviour terms' weights are scaled by the model's "
             "target coverage (the share of users' latest likes that enough other users liked, "
             "so that a model learned from the others could have scored them) to the power "
             "`behaviour_support_exponent`. Chosen on validation at the run's own size and on "
             "deployments of its first users only (their movies and events; the default "
             "strategy's tuned weights and seen policy): the tuning objective against each "
             "size's best non-personalized ranking (`floor`), summed over the sizes.", "",
             "| users | coverage | exponent | objective | term | words | refind | floors "
             "(term, words, refind) | chosen |", "| --- |" + " --- |" * 8]
    lines += [f"| {r['users']} | {r['coverage']:.3f} | {r['exponent']:g} | "
              f"{r['objective']:.4f} | {r['term']:.4f} | {r['words']:.4f} | "
              f"{r['refind']:.4f} | {r['floor term']:.4f}, {r['floor words']:.4f}, "
              f"{r['floor refind']:.4f} | {'yes' if r['chosen'] else ''} |" for r in rows]
    return lines


def _percent(gain: float | None) -> str:
    return "n/a" if gain is None else f"{gain:+.1%}"


def _significant(test: dict[str, float], level: float) -> bool:
    return max(test["p_bootstrap"], test["p_wilcoxon"]) < level


def _goals(t: dict[str, Any], protocol: str) -> list[str]:
    """The issue's goals for one strategy and protocol: met or not."""
    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    gain, harm = t["relative_gain"], t["harm"]
    no_harm = "no harm: " + mark(min(harm["p_bootstrap"], harm["p_wilcoxon"]) >= 0.05)
    if protocol not in DISCOVERY:
        return [no_harm]
    goals = [f"+{GOAL:.0%} p<0.01: " + mark(gain is not None and gain >= GOAL
                                             and _significant(t["vs_comparator"], 0.01)),
             no_harm]
    if "vs_item_prior" in t:
        prior = t["gain_vs_item_prior"]
        goals += [
            f"+{CONTROL_GOAL:.0%} over item prior p<0.01: " + mark(
                prior is not None and prior >= CONTROL_GOAL
                and _significant(t["vs_item_prior"], 0.01)),
            "dynamic beats static p<0.05: " + mark(_significant(t["dynamic_vs_static"], 0.05))]
    tail = t.get("tail")
    if tail is not None:
        goals.append(f"tail +{TAIL_GOAL:.0%} p<0.05: " + mark(
            tail["relative_gain"] is not None and tail["relative_gain"] >= TAIL_GOAL
            and _significant(tail["vs_comparator"], 0.05)))
    return goals


# The issue's goals for a run's time on this machine: `make eval`, `make eval-quick`.
TIME_GOAL_S = {"full": 1800.0, "quick": 300.0}


def _phase_seconds(results: dict[str, Any]) -> list[str]:
    """Where the run's time went (a phase repeated per engine is summed)."""
    phases = results.get("phase_seconds") or {}
    if not phases:
        return []
    goal = TIME_GOAL_S["quick" if results.get("quick") else "full"]
    met = "met" if results["seconds"] <= goal else "NOT met"
    return ["", f"## Where the {results['seconds']:.0f} s went", "",
            f"Goal: this run under {goal / 60:g} minutes here: {met} "
            f"({results['seconds'] / 60:.1f} minutes).", "",
            "| phase | seconds | share |", "| --- | --- | --- |",
            *(f"| {name} | {seconds:.0f} | {seconds / results['seconds']:.0%} |"
              for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1]))]


def _ablations(results: dict[str, Any]) -> list[str]:
    lines = ["## Half-life ablation (validation, content profile)", "",
              "| long (days) | short (days) | NDCG@10 |", "| --- | --- | --- |"]
    lines += [f"| {a['long_days']:g} | {a['short_days']:g} | {a['val_ndcg@10']:.4f} |"
              for a in results["ablation"]]
    if results.get("short_half_life_validation"):
        lines += ["", "Short-term half-life, chosen beside behaviour (validation, the default "
                  "strategy's tuning objective; under each candidate the short-term and "
                  "behaviour weights searched again):", "",
                  "| short (days) | objective | behaviour | behaviour short | interest short "
                  "| chosen |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c['short_days']:.4g} | {c['objective']:.4f} | "
                  f"{c['weights']['behaviour']:g} | {c['weights']['behaviour_short']:g} | "
                  f"{c['weights']['interest_short']:g} | {'yes' if c['chosen'] else ''} |"
                  for c in results["short_half_life_validation"]]
    lines += ["", "Popularity half-life (validation, BM25 + popularity):", "",
              "| half-life (days) | NDCG@10 |", "| --- | --- |"]
    lines += [f"| {a['days']:g} | {a['val_ndcg@10']:.4f} |"
              for a in results.get("popularity_ablation", [])]
    if results.get("embedded_text"):
        lines += ["", "Embedded text: the title's trailing year dropped (`years`) or kept "
                  "(`none`), each in its own index (validation, first engine; the query vector "
                  "alone, and with a content profile):", "",
                  "| title cleanup | query vector | content profile | chosen |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {a['cleanup']} | {a['val_ndcg@10 query vector']:.4f} | "
                  f"{a['val_ndcg@10 content profile']:.4f} | {'yes' if a['chosen'] else ''} |"
                  for a in results["embedded_text"]]
    else:
        lines += ["", "This run chose no title cleanup, behaviour model, half-life, seen "
                  "policy, blend weights or language model: they are the configured ones, so "
                  "it measures what ships (`--choose` chooses them; the ablations above are "
                  "reported either way)."]
    choice = results.get("behaviour_choice") or {}
    if choice.get("validation"):
        lines += ["", "Behaviour vectors: the model, each at its own best settings "
                  "(searched one at a time from the ranking file's: item2vec's window, "
                  "negative-sampling exponent and epochs, ALS's penalty and how many users a "
                  "document needs for a vector), then cold "
                  "documents' vectors mapped from their text (a ridge map fitted on documents "
                  "with both; `confidence`: how far a mapped vector is trusted against a "
                  "learned one, its cosine to any user that share of its mapped "
                  "direction's), each trained from the log and scored with the blend the "
                  "tuning would give it: from the content terms this run tuned before any "
                  "training for the engine's default strategy (its non-personalized default, "
                  "then its content terms under the starting seen policy, the code's, not the "
                  "ranking file's: a rerun starts from the same point), its behaviour weights "
                  "and the rest searched beside them for each candidate (every validation "
                  "query, first engine). Each step keeps what the ranking file ships "
                  "unless another candidate beats it in at least "
                  f"{results.get('strategy_choice', {}).get('confidence', 0.95):.0%} of "
                  "paired bootstrap resamples of the validation queries (the strategy "
                  "order's rule: near-tied models would swap on a rerun's noise), and then "
                  "takes the best of those that do. The objective is the tuning's (the seen "
                  "policy's above; its floors here: that strategy's non-personalized default "
                  "and BM25 + popularity, as this run tuned them); "
                  "the map's step (no map against each confidence) holds the tail targets to "
                  "their floor too (the better of the two on them"
                  + (f", {choice['tail_floor']:.4f}" if "tail_floor" in choice else "")
                  + "), as the map is for them and reads their text, not their users; "
                  "NDCG@10 per protocol and on tail targets beside it:",
                  "", "| settings | objective | with the tail floor | term | words | refind "
                  "| tail |", "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {v['objective']:.4f} | "
                  + (f"{v['objective_tail_floor']:.4f}" if "objective_tail_floor" in v
                     else "-") + " | "
                  + " | ".join(f"{v[p]:.4f}" for p in (*PROTOCOLS, "tail")) + " |"
                  for name, v in choice["validation"].items()]
        if choice.get("overtakes"):
            lines += ["", "Share of resamples in which a challenger beat the setting held "
                      "(what differs between them): " + "; ".join(
                          f"{_setting_change(pair)} {share:.1%}"
                          for pair, share in choice["overtakes"].items()) + "."]
        lines += ["", "Chosen: " + ", ".join(f"`{k.removeprefix('behaviour_')}` {v}"
                                             for k, v in choice["chosen"].items()) + "."]
    lines += _support(results)
    lines += _language_model(results)
    lines += _learned_ranker(results)
    lines += _phase_seconds(results)
    lines += ["", "## Plots", "", "![NDCG@10 by method](ndcg_by_method.png)", "",
              "![NDCG@10 against half-life](ndcg_vs_half_life.png)", "",
              "![Interest drift](interest_drift.png)", ""]
    return lines
