"""What the estimator needs to know about a model: the config.json fields, typed and validated.

One idea a module: ``spec`` (the ``ModelSpec`` value and its quantization and MoE parts), ``hf_config``
(config.json → ``ModelSpec``, with ``hf_fields`` reading one field and ``hf_quantization`` the quantization
config), ``catalog_format`` (counts and names as models.yaml writes them), ``entries`` (models.yaml's shape,
validated by pydantic, built on first read) and ``lookup`` (the built-in catalog, loaded on
first use, found by id or alias). Every name is importable from ``qwendeploy.core.models`` as before; the
family types (``Task``, ``VisionTower``, ``LinearAttention``) live in ``qwendeploy.core.families``.
"""

from __future__ import annotations

from qwendeploy.core.models.catalog_format import ModelCatalogError as ModelCatalogError
from qwendeploy.core.models.catalog_format import parse_count as parse_count
from qwendeploy.core.models.hf_config import spec_from_hf_config as spec_from_hf_config
from qwendeploy.core.models.lookup import catalog as catalog
from qwendeploy.core.models.lookup import find_model as find_model
from qwendeploy.core.models.lookup import parse_model_catalog as parse_model_catalog
from qwendeploy.core.models.lookup import suggest_models as suggest_models
from qwendeploy.core.models.spec import ModelSpec as ModelSpec
from qwendeploy.core.models.spec import Moe as Moe
from qwendeploy.core.models.spec import Quantization as Quantization
