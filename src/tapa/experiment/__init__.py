"""What every experiment (``tapa reproduce`` and each ``tapa study``) is built from.

- :mod:`tapa.experiment.stages`: cached, resumable stages under ``OUT/stages/NAME-HASH/``;
- :mod:`tapa.experiment.runs`: the run skeleton: a training stage's work (:func:`train_in`),
  the machine description, and the results file every experiment writes.

Figures and tables come from :mod:`tapa.utils.report` (``pyplot``, ``markdown_table``).
"""
