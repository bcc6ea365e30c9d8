"""The analysis the book reads: records -> tables, statistics, verdicts, figures.

``aggregate`` (tables, curves, pairs) and ``stats`` / ``margin`` (the declared statistics) under
``verdicts``, ``claims``, ``confirm`` and ``decidability`` (the rules and what a design can decide),
``pilot`` (the exploratory pilot's C3 estimates), and the chapters' numbers: ``report``, ``budget`` /
``budget_report``, ``confirm_report``, ``fewshot``, ``bench_report``,
``datasets_summary``; the heads-as-experts analysis (``experts``, ``expert_stats``, ``deployment``)
and ``plots``. The analysis imports the method library and the study, never the reverse
(``tests/test_architecture.py``).
"""
