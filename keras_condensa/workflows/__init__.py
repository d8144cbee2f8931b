"""Workflows: the application layer the command line, the demo and the tuner share.

One path per job:

- `fine_tune.fine_tune`: the one fine-tune dispatch (mask, L-C, distillation),
  with the finite-loss check and the early stop.
- `measure`: accuracy from predictions, logits detection, finite weights.
- `deploy.export_measured`: the one export -> verify -> benchmark
  (`tflite_export`, imported only when called).
- `files`: the one atomic write (models, JSON, text).
- `compress.compress`: the `compress` workflow.

The search workflow (`keras_condensa.search.run.run_search`) lives with the
tuner it drives, one floor up (operators <- wrappers <- surgery <-
fine-tuning <- workflows <- search <- cli).
"""

from keras_condensa.workflows.compress import Compressed, compress
from keras_condensa.workflows.deploy import export_measured
from keras_condensa.workflows.fine_tune import FineTuned, SchemeError, fine_tune

__all__ = ["Compressed", "FineTuned", "SchemeError", "compress", "export_measured", "fine_tune"]
