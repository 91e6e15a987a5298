from django.contrib import admin

from moderation.models import Report


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin[Report]):
    list_display = ["created_at", "category", "room", "reporter", "about", "state"]
    list_filter = ["state", "category"]
    search_fields = ["text", "reporter__email", "about__email"]
    raw_id_fields = ["room", "reporter", "about"]
    readonly_fields = ["room", "reporter", "about", "category", "text", "created_at"]
