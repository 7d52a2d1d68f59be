"""Space deployment on the Hub: create the Space, make its files the planned ones, set secrets, variables
and hardware."""
from __future__ import annotations

import logging

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, SpaceHardware

from hub.models import hub_errors

logger = logging.getLogger(__name__)

HARDWARE = tuple(h.value for h in SpaceHardware)
"""Hardware names a Space can request (cpu-basic, zero-a10g, t4-small, …)."""
KEPT_ON_SPACE = {".gitattributes"}
"""Files already on the Space that a deploy never deletes."""


def deploy(plan, token: str, endpoint: str | None = None) -> str:
    """Create/update the Space as a :class:`space_config.deploy.DeployPlan` says; returns the commit id of the uploaded files."""
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(f"deploying to the Space {plan.space}", plan.space, token):
        api.create_repo(plan.space, repo_type="space", space_sdk="gradio", private=plan.private, exist_ok=True)
        stale = set(api.list_repo_files(plan.space, repo_type="space")) - set(plan.files) - KEPT_ON_SPACE
        operations = [CommitOperationDelete(path) for path in sorted(stale)]
        operations += [CommitOperationAdd(rel, str(path)) for rel, path in sorted(plan.files.items())]
        info = api.create_commit(plan.space, repo_type="space", operations=operations,
                                 commit_message=f"Deploy {len(plan.files)} files")
        for key, value in plan.secrets.items():
            api.add_space_secret(plan.space, key, value)
        for key, value in plan.variables.items():
            api.add_space_variable(plan.space, key, value)
        if plan.hardware:
            api.request_space_hardware(plan.space, SpaceHardware(plan.hardware))
    logger.info("Deployed %d files to %s (%d removed)", len(plan.files), plan.space, len(stale))
    return info.oid
