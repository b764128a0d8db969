"""The simulated deployments: one fixed table, and their AI API records (protocol §3.2).

Ids are fixed so tests can name a deployment without listing first; ``DEPLOYMENT_IDS``
maps each default model name to its id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

FOUNDATION_MODELS = "foundation-models"
_CONFIG_NAMESPACE = uuid.UUID("6f1c52b4-7f0e-4d8e-9a55-5a1c0f5e2d11")


@dataclass(frozen=True)
class Deployment:
    """One AI Core deployment of one model.

    :param kind: ``"chat"`` or ``"embedding"``: which operations the model supports.
    """

    id: str
    model: str
    version: str
    executable_id: str
    kind: str = "chat"
    resource_group: str = "default"
    scenario_id: str = FOUNDATION_MODELS
    status: str = "RUNNING"
    created_at: str = "2025-01-15T09:30:00Z"
    modified_at: str = "2025-01-15T09:35:00Z"
    submission_time: str = "2025-01-15T09:30:05Z"
    start_time: str = "2025-01-15T09:31:10Z"

    @property
    def path(self) -> str:
        """The deployment URL's path; append it to the AI API base URL."""
        return f"/v2/inference/deployments/{self.id}"

    @property
    def configuration_id(self) -> str:
        """A stable configuration id derived from the deployment id."""
        return str(uuid.uuid5(_CONFIG_NAMESPACE, self.id))

    def record(self, base_url: str) -> dict[str, object]:
        """The full AI API deployment record, with every field the official SDKs require."""
        backend = {"model": {"name": self.model, "version": self.version}}
        return {
            "id": self.id,
            "deploymentUrl": base_url.rstrip("/") + self.path,
            "configurationId": self.configuration_id,
            "configurationName": f"{self.model}-config",
            "executableId": self.executable_id,
            "scenarioId": self.scenario_id,
            "status": self.status,
            "targetStatus": self.status,
            "lastOperation": "CREATE",
            "latestRunningConfigurationId": self.configuration_id,
            "statusMessage": None,
            "createdAt": self.created_at,
            "modifiedAt": self.modified_at,
            "submissionTime": self.submission_time,
            "startTime": self.start_time,
            "details": {
                # snake_case is what AI Core sends; the camelCase copy serves the JS SDK.
                "resources": {"backend_details": backend, "backendDetails": backend},
                "scaling": {"backend_details": {}, "backendDetails": {}},
            },
        }


#: The default catalog; every deployment is RUNNING in resource group ``default``.
DEFAULT_DEPLOYMENTS: tuple[Deployment, ...] = (
    Deployment("57655e275101455a", "gpt-4o", "2024-08-06", "azure-openai"),
    Deployment("2ec9b51f8bbbb6a4", "gpt-4.1", "2025-04-14", "azure-openai"),
    Deployment("98c89f9da3a65173", "gpt-5", "2025-08-07", "azure-openai"),
    Deployment("381b585b04a0030b", "text-embedding-3-small", "1", "azure-openai", kind="embedding"),
    Deployment("f1da026e8eca9e94", "text-embedding-3-large", "1", "azure-openai", kind="embedding"),
    Deployment("7fdc8a073118f06e", "mistralai--mistral-small-instruct", "2409", "aicore-mistralai"),
    Deployment("a0383eb5a3d8b8ed", "anthropic--claude-4.5-sonnet", "1", "aws-bedrock"),
    Deployment("2a4f6ad557da3500", "gemini-2.5-flash", "001", "gcp-vertexai"),
)

#: Default model name → deployment id.
DEPLOYMENT_IDS: dict[str, str] = {d.model: d.id for d in DEFAULT_DEPLOYMENTS}
