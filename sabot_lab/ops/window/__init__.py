"""Event-time window operators and what they keep.

* :mod:`.watermark`: the per-row watermark (``WatermarkOp``) and event-time helpers;
* :mod:`.base`: ``WindowOperator``, what every window operator shares;
* :mod:`.fixed`: tumbling and hopping windows with allowed lateness;
* :mod:`.sessions`: per-key session windows;
* :mod:`.top_n`: the top groups of each emitted window;
* :mod:`.aggregates`, :mod:`.sketch`, :mod:`.keys`: partial aggregates per slot, mergeable
  quantile sketches, dense ids for group keys.
"""

from sabot_lab.ops.window.fixed import WindowAggregateOp
from sabot_lab.ops.window.sessions import SessionWindowOp
from sabot_lab.ops.window.top_n import TopNOp
from sabot_lab.ops.window.watermark import WatermarkOp

__all__ = ["SessionWindowOp", "TopNOp", "WatermarkOp", "WindowAggregateOp"]
