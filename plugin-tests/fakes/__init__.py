"""In-repo test doubles for the cloud KMS services the keymgmt plugin talks to."""

from .azure_keyvault import AzureKeyVaultFake, FakeKeyVault, KeyVersion, ValidationFailure
from .gcp_auth import ServiceAccountKey, new_service_account
from .gcp_kms import CryptoKeySnapshot, FakeCloudKms, GcpKmsFake, ImportJobSnapshot, KmsSnapshot, VersionSnapshot
from .httpserver import RequestRecord

__all__ = [
    "AzureKeyVaultFake", "CryptoKeySnapshot", "FakeCloudKms", "FakeKeyVault", "GcpKmsFake", "ImportJobSnapshot",
    "KeyVersion", "KmsSnapshot", "RequestRecord", "ServiceAccountKey", "ValidationFailure", "VersionSnapshot",
    "new_service_account",
]
