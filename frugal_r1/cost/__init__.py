"""Cost: hardware profiles, DeepSeek-V3's reported cost and its derivation, and the run planner.

    from frugal_r1.cost import Stage, get_hardware, project
    projection = project([Stage("pretrain", tokens=10**8, seq_len=512)], preset("small"), get_hardware("cpu"))
"""

from frugal_r1.cost.hardware import Hardware, cpu_profile, get_hardware, load_profiles, measure_cpu_peak
from frugal_r1.cost.planner import MemoryFit, Projection, Stage, StageProjection, memory_fit, project

__all__ = ["Hardware", "MemoryFit", "Projection", "Stage", "StageProjection", "cpu_profile", "get_hardware",
           "load_profiles", "measure_cpu_peak", "memory_fit", "project"]
