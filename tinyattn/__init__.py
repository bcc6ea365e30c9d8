"""tinyattn: a reproducible study of tiny-attention adapters (Zhao, Tan & Mei, EMNLP 2022).

Three layers, each importing only the ones above it in this list (``tests/test_architecture.py``):
the **method library** (this folder: what ``pip install tinyattn`` is for), the **study**
(``tinyattn/study/``: grids of runs) and the **analysis** the book reads (``tinyattn/analysis/``).
Data flows one way: *profile -> planned runs -> runner -> records -> analysis -> chapters*.

The method library (``tinyattn.*``)
    ``adapter``       ``TinyAttention``: the plain definition of one layer's adapter (E experts).
    ``fastpath``      the same function in fewer passes (folded weights, CPU tricks), tested against it.
    ``inject``        placing adapters in BERT / RoBERTa / ALBERT encoders; averaging; two-stage start.
    ``peft``          tiny attention as a PEFT method (``get_peft_model``); ``peft_convert`` between routes.
    ``model``         backbones (the packaged MiniLM-L6 offline) and ``EncoderClassifier``.
    ``registry``      one entry per method: defaults, checks, retired options, speed, FLOPs.
    ``methods``       every method registered: tiny attention and the baselines (peft, adapters).
    ``checkpoint``    adapter-only save and load, refusing another backbone.
    ``tasks``         task specs (GLUE, and FewGLUE RTE / CB as few-shot classification tasks).
    ``data``          GLUE loading (local folder or Hub); ``batching`` encodes and batches.
    ``fewglue``       FewGLUE / SuperGLUE data and the cloze pattern; ``cloze`` the PET-style protocol.
    ``metrics``       GLUE metrics and majority-class baselines.
    ``train``         the training loop (Accelerate): evaluation, best / last weights.
    ``experiment``    one run's parameters -> trained model and its record.
    ``records``       the runs folder: record files, adapter folders, one reader, provenance.
    ``measure``       timing and memory helpers.
    ``repository``    the repository's address: one setting (``_config.yml``), written into notebooks.

The study (``tinyattn.study.*``)
    ``profiles``      study grids: load, validate, expand into runs, cost estimates (pure).
    ``tuning``        learning rates chosen on held-out data, on top of profiles.
    ``runner``        running a grid: locks, executors, scheduler, resume, analyses;
                      ``priority`` keeps each run's notebook kernel at the runner's niceness.
    ``rows``          finished runs as a table, one row per record (what studies and chapters read).
    ``status``        a profile's status and finished runs, for chapters and notebooks.
    ``ray_executor``  a grid's runs as Ray tasks (``--executor ray``: a multi-GPU box, a cluster).
    ``merge``         record folders (or Colab zips) from several machines merged into one, checked;
                      ``shards`` a shard's commands and its zip of records (the Colab notebook's logic).
    ``reproduce``     rerun a profile's recorded runs into a fresh folder and compare with the records.
    ``pins``          pinned profiles: their commits and the training code a pin covers.
    ``bench``         the cost benchmark; ``gpu_bench`` the paper-scale path timed on a GPU.
    ``commands``      the study's subcommands of ``tinyattn`` (study, reproduce, analyse, bench, merge).

The analysis (``tinyattn.analysis.*``)
    ``aggregate``     records -> tables, curves, paired comparisons.
    ``stats``         the declared statistics: intervals, sign test, Holm, collapsed runs.
    ``margin``        the confirmatory rule: task-blocked t, equivalence margin, four outcomes.
    ``decidability``  what a design can decide: a rule's verdicts simulated over true effects.
    ``confirm``       the confirmatory round's plan (C2, C3), its design and its verdicts.
    ``verdicts``      the rules that turn comparisons into verdicts on the paper's claims.
    ``pilot``         the exploratory pilot's C3 comparisons as estimates, no verdict out of reach.
    ``fewshot``       the few-shot chapter's numbers (claim C4) from the records, and C4's verdict.
    ``budget``        the budget study: 10-epoch runs paired with the ``cpu`` study's, C1 at both;
                      ``budget_report`` the chapter's tables and sentences of it.
    ``report``        the tables and sentences the chapters show; ``claims`` those of the claim
                      chapters' declared comparisons; ``bench_report`` the numbers of a benchmark.
    ``datasets_summary`` split sizes, label counts and majority-class scores, recorded for the book.
    ``experts``       the heads-as-experts analysis of one run (``expert_stats``: its maths;
                      ``deployment``: deployment variants); ``plots`` figures.

``cli`` (the ``tinyattn`` command) sits on top. The old flat paths (``tinyattn.aggregate``, ...) still
import, with a deprecation warning (``_moved``).
"""

from tinyattn import _moved

_moved.install()
