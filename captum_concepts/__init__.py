"""captum_concepts: embedding attributions, concept discovery and representation
scores that extend Captum.

Public names live in the subpackages (``captum_concepts.attr``, ``.concept``,
``.metrics``, ``.visualization``, ``.data``) and are re-exported here, so
``captum_concepts.EmbeddingAttribution`` works as well as
``captum_concepts.attr.EmbeddingAttribution``.
"""

from . import attr, concept, data, distributed, metrics, visualization
from .attr import *  # noqa: F401,F403
from .concept import *  # noqa: F401,F403
from .metrics import *  # noqa: F401,F403

__version__ = "0.1.0"

__all__ = ["attr", "concept", "data", "distributed", "metrics", "visualization", "__version__"]
__all__ += attr.__all__ + concept.__all__ + metrics.__all__
