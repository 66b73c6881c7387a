"""The diagnosis rule catalog: ``qwendeploy/data/rules.yaml`` loaded, validated and rendered as docs.

The catalog is data (see the FAQ at the top of the YAML file). One idea a module: ``catalog`` (the names a rule
may use and the frozen values the engine reads), ``schema`` (the YAML's shape as pydantic models), ``loading``
(parse, validate, check the whole catalog; ``load_catalog``) and ``troubleshooting`` (docs/troubleshooting.md).
Matching lives in ``engine.py``. This module re-exports only the names imported from it (restart, the tests,
scripts/gen_docs.py).
"""

from __future__ import annotations

from qwendeploy.core.diagnosis.catalog import CATEGORIES as CATEGORIES
from qwendeploy.core.diagnosis.catalog import CatalogError as CatalogError
from qwendeploy.core.diagnosis.loading import load_catalog as load_catalog
from qwendeploy.core.diagnosis.loading import parse_catalog as parse_catalog
from qwendeploy.core.diagnosis.troubleshooting import troubleshooting_markdown as troubleshooting_markdown
