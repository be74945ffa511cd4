"""Stage `report`: the results table and plots of every experiment in the config (`python -m stages.report`).

Outputs: results.md, results.html, results.csv (`table`); metrics_by_variant.png, loss_curves.png, index_kinds.png
(when the config has a lossy index kind) and efficiency.png (`plots`); efficiency.md and efficiency.csv, quality
against GPU seconds (`costs`); report.json, everything in the table unrounded (`stage`). Inputs: ``score_<n>`` (score
artifacts) and ``train_<n>`` (training artifacts), described by the ``rows`` param.

Importing the package imports none of its modules: `stage` holds the parameters, the work and ``main``.
"""

VERSION = 3
"""The package's code version, part of every report artifact's key: raise it when any module here changes what the
stage writes."""
