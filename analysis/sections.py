"""The report's eight sections in report order, and metrics.json's dict.

The sections live by subject: sections_search.py (1-3: headline, search, learning curves) and
sections_eval.py (4-8: evaluation, predictions, embeddings, paired comparison, CLIP); metrics_json.py holds
the scores they all draw from and the metrics.json contract. `build` runs them and returns both.
"""
from __future__ import annotations

from analysis import pareto, sections_eval, sections_search
from analysis.evaluate import Evaluation, RunData
from analysis.html import Section
from analysis.metrics_json import metrics_json, score, size_metrics
from analysis.run_tables import Run
from analysis.sections_eval import Options
from analysis.sections_search import Log

SECTION_TITLES = sections_search.TITLES + sections_eval.TITLES


def build(run: Run, data: RunData, ev: Evaluation, opts: Options, log: Log) -> tuple[list[Section], dict]:
    """All eight sections in report order, and metrics.json's dict."""
    scores = score(ev)
    sections = [sections_search.headline(run, ev, scores)]
    log("section 2: search")
    size = pareto.size_table(run)
    sections.append(sections_search.search_section(run, log, size))
    log("section 3: learning curves")
    sections.append(sections_search.curves_section(run))
    log("sections 4-5: evaluation, predictions")
    sections += [sections_eval.evaluation_section(run, scores), sections_eval.predictions_section(data, ev, opts)]
    sections.append(sections_eval.embeddings_section(data, ev, opts, log))
    log("section 7: paired comparison")
    sections.append(sections_eval.significance_section(run, opts))
    clip_sec, clip_metrics = sections_eval.clip_section(run.run_dir, scores, log)
    sections.append(clip_sec)
    return sections, metrics_json(run, ev, scores, clip_metrics, size_metrics(size))
