from django.contrib.admin.apps import AdminConfig


class ParleyAdminConfig(AdminConfig):
    """Django admin behind Parley's staff gate (staff flag and a two-factor session)."""

    default_site = "config.admin.ParleyAdminSite"
