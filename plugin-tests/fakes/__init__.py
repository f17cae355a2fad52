"""In-repo test doubles for the cloud KMS services the keymgmt plugin talks to."""

from .azure_keyvault import AzureKeyVaultFake, FakeKeyVault, KeyVersion, ValidationFailure
from .httpserver import RequestRecord

__all__ = ["AzureKeyVaultFake", "FakeKeyVault", "KeyVersion", "RequestRecord", "ValidationFailure"]
