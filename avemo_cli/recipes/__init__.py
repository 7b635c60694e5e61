"""The default model's training recipes (``examples/train_default.py`` runs them;
``benchmarks/bench_crosscorpus.py`` scores them): the corpora it learns from (``corpora``), still
faces as clips for the visual branch (``stills``) and the audio branch's cross-corpus speech
recipe (``speech``). Nothing in annotate, train or eval imports this package."""
