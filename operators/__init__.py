"""The refseg operators, one module each; ``OPERATORS`` is what ``register`` registers."""

from .accept_predictions import AcceptPredictions, UndoAccept
from .add_references import AddReferences
from .apply_thresholds import ApplyThresholds
from .boxes_to_masks import BoxesToMasks
from .build_memory_bank import BuildMemoryBank
from .evaluate import Evaluate
from .manage_banks import ManageBanks
from .predict import Predict
from .preview import Preview
from .run_shard import RunShard
from .sample_references import SampleReferences
from .sharded_runs import ShardedRuns
from .suggest_thresholds import SuggestThresholds

OPERATORS = (
    SampleReferences,
    BoxesToMasks,
    BuildMemoryBank,
    Predict,
    RunShard,
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
