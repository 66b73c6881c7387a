"""The diagnosis rule catalog: ``qwendeploy/data/rules.yaml`` loaded, validated and rendered as docs.

The catalog is data (see the FAQ at the top of the YAML file). One idea a module: ``catalog`` (the names a rule
may use and the frozen values the engine reads), ``schema`` (the YAML's shape as pydantic models), ``loading``
(parse, validate, check the whole catalog; ``load_catalog``) and ``troubleshooting`` (docs/troubleshooting.md).
Matching lives in ``engine.py``. Every name stays importable from ``qwendeploy.core.diagnosis.rules``.
"""

from __future__ import annotations

from qwendeploy.core.diagnosis.catalog import CATEGORIES as CATEGORIES
from qwendeploy.core.diagnosis.catalog import CHECKS as CHECKS
from qwendeploy.core.diagnosis.catalog import DERIVATIONS as DERIVATIONS
from qwendeploy.core.diagnosis.catalog import FACT_VALUES as FACT_VALUES
from qwendeploy.core.diagnosis.catalog import FACTS as FACTS
from qwendeploy.core.diagnosis.catalog import Catalog as Catalog
from qwendeploy.core.diagnosis.catalog import CatalogError as CatalogError
from qwendeploy.core.diagnosis.catalog import FactRef as FactRef
from qwendeploy.core.diagnosis.catalog import Phase as Phase
from qwendeploy.core.diagnosis.catalog import Rule as Rule
from qwendeploy.core.diagnosis.catalog import Signature as Signature
from qwendeploy.core.diagnosis.catalog import template_fields as template_fields
from qwendeploy.core.diagnosis.loading import ALWAYS_VALUES as ALWAYS_VALUES
from qwendeploy.core.diagnosis.loading import always_known as always_known
from qwendeploy.core.diagnosis.loading import load_catalog as load_catalog
from qwendeploy.core.diagnosis.loading import parse_catalog as parse_catalog
from qwendeploy.core.diagnosis.loading import rules as rules
from qwendeploy.core.diagnosis.schema import CatalogFile as CatalogFile
from qwendeploy.core.diagnosis.schema import FactEntry as FactEntry
from qwendeploy.core.diagnosis.schema import PhaseEntry as PhaseEntry
from qwendeploy.core.diagnosis.schema import RestartEntry as RestartEntry
from qwendeploy.core.diagnosis.schema import RuleEntry as RuleEntry
from qwendeploy.core.diagnosis.schema import SignatureEntry as SignatureEntry
from qwendeploy.core.diagnosis.troubleshooting import troubleshooting_markdown as troubleshooting_markdown
