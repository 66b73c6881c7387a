"""``qwendeploy schema``: print the profile's JSON Schema."""

from __future__ import annotations

import json


def schema() -> None:
    """Print the JSON Schema of profile files (for editor completion: save it as profile.schema.json)."""
    from qwendeploy.core.profile import json_schema

    print(json.dumps(json_schema(), indent=2))
