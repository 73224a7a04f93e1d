"""The refseg operators, one module each; ``OPERATORS`` is what ``register`` registers."""

from .accept_predictions import AcceptPredictions, UndoAccept
from .add_references import AddReferences
from .apply_thresholds import ApplyThresholds
from .boxes_to_masks import BoxesToMasks
from .build_memory_bank import BuildMemoryBank
from .evaluate import Evaluate
from .manage_banks import ManageBanks
from .predict import Predict
from .predict_shard import PredictShard
from .preview import Preview
from .sample_references import SampleReferences
from .sharded_runs import ShardedRuns
from .suggest_thresholds import SuggestThresholds

OPERATORS = (
    SampleReferences,
    BoxesToMasks,
    BuildMemoryBank,
    Predict,
    PredictShard,
    ShardedRuns,
    Evaluate,
    ManageBanks,
    Preview,
    AddReferences,
    SuggestThresholds,
    ApplyThresholds,
    AcceptPredictions,
    UndoAccept,
)
