"""The page's two languages: Dutch terms from the seed help page, and English.

Pure: no request, no clock. `choose` picks the language from an explicit choice, a remembered
one, or the browser's `Accept-Language`, in that order.
"""

from __future__ import annotations

from typing import Final, Literal

Language = Literal["nl", "en"]
LANGUAGES: Final[tuple[Language, ...]] = ("nl", "en")
DEFAULT: Final[Language] = "en"
_BY_NAME: Final[dict[str, Language]] = {name: name for name in LANGUAGES}

LABELS: Final[dict[str, dict[Language, str]]] = {
    "page_title": {"nl": "Licenties", "en": "Licences"},
    "tab_licences": {"nl": "Licenties", "en": "Licences"},
    "tab_status": {"nl": "Status", "en": "Status"},
    "language": {"nl": "Taal", "en": "Language"},
    "sign_in": {"nl": "Aanmelden", "en": "Sign in"},
    "tenants": {"nl": "Klanten", "en": "Tenants"},
    "no_tenants": {"nl": "Nog geen klanten bekend.", "en": "No tenants known yet."},
    "sign_out": {"nl": "Afmelden", "en": "Sign out"},
    "api_key": {"nl": "API-sleutel", "en": "API key"},
    "bad_key": {"nl": "Onbekende API-sleutel.", "en": "Unknown API key."},
    "form_expired": {
        "nl": "Het formulier is verlopen of ongeldig. Probeer het opnieuw.",
        "en": "The form has expired or is not valid. Please try again.",
    },
    "signed_in_as": {"nl": "Aangemeld als", "en": "Signed in as"},
    "owner_details": {"nl": "Gegevens van eigenaar", "en": "Owner details"},
    "company": {"nl": "Bedrijfsnaam", "en": "Company name"},
    "serial_number": {"nl": "Serienummer", "en": "Serial number"},
    "expires_on": {"nl": "Vervaldatum", "en": "Expiry date"},
    "grace_to": {"nl": "Respijt tot", "en": "Grace period until"},
    "licence_list": {"nl": "Licentielijst", "en": "Licence list"},
    "licence": {"nl": "Licentie", "en": "Licence"},
    "kind": {"nl": "Soort", "en": "Kind"},
    "in_use": {"nl": "In gebruik", "en": "In use"},
    "available": {"nl": "Beschikbaar", "en": "Available"},
    "total": {"nl": "Totaal", "en": "Total"},
    "licence_details": {"nl": "Licentiegegevens", "en": "Licence details"},
    "select_licence": {
        "nl": "Klik op een licentienaam om informatie over een licentie weer te geven.",
        "en": "Select a licence name to show its details.",
    },
    "no_licences": {"nl": "Nog geen licenties bekend.", "en": "No licences known yet."},
    "kind_user": {"nl": "Gebruiker", "en": "User"},
    "kind_site": {"nl": "Site", "en": "Site"},
    "kind_satellite": {"nl": "Satelliet", "en": "Satellite"},
    "database": {"nl": "Database", "en": "Database"},
    "owner": {"nl": "Eigenaar", "en": "Owner"},
    "database_type": {"nl": "Type", "en": "Type"},
    "db_central": {"nl": "Centrale database", "en": "Central database"},
    "db_satellite": {"nl": "Satellietdatabase", "en": "Satellite database"},
    "next_expiry": {"nl": "Volgende vervaldatum", "en": "Next expiry date"},
    "users": {"nl": "Gebruikers", "en": "Users"},
    "none": {"nl": "geen", "en": "none"},
    "metered_services": {"nl": "Diensten met datalimiet", "en": "Metered services"},
    "metered_intro": {
        "nl": "Boven de drempelwaarde wordt per pakket gefactureerd op uw volgende maandfactuur. "
        "Hoe meer gebruikers, hoe hoger de drempelwaarde.",
        "en": "Above the threshold, usage is billed per package on your next monthly invoice. "
        "The more users, the higher the threshold.",
    },
    "this_month": {"nl": "Deze maand", "en": "This month"},
    "next_invoice": {"nl": "Volgende factuur", "en": "Next invoice"},
    "invoice_so_far": {"nl": "Tot nu toe", "en": "So far"},
    "pending_adjustments": {"nl": "Openstaande correcties", "en": "Pending adjustments"},
    "next_invoice_intro": {
        "nl": "Wat de volgende maandafsluiting nu zou factureren, inclusief correcties voor "
        "verbruik dat na een afsluiting binnenkwam.",
        "en": "What the next month close would bill now, including adjustments for usage "
        "that arrived after a month was closed.",
    },
    "of_included": {"nl": "van inbegrepen", "en": "of included"},
    "amount_so_far": {"nl": "Bedrag tot nu toe", "en": "Amount so far"},
    "month": {"nl": "Maand", "en": "Month"},
    "usage": {"nl": "Gebruik", "en": "Usage"},
    "included": {"nl": "Inbegrepen", "en": "Included"},
    "package_boundary": {"nl": "Pakketgrens", "en": "Package boundary"},
    "packages": {"nl": "Pakketten", "en": "Packages"},
    "over_threshold": {"nl": "Boven drempelwaarde", "en": "Over threshold"},
    "show_table": {"nl": "Toon als tabel", "en": "Show as table"},
    "chart_label": {
        "nl": "{service}: gebruik per maand, {first} tot {last}",
        "en": "{service}: usage per month, {first} to {last}",
    },
    "system_messages": {"nl": "Systeemmeldingen", "en": "System messages"},
    "events": {"nl": "Gebeurtenissen", "en": "Events"},
    "description": {"nl": "Beschrijving", "en": "Description"},
    "select_event": {
        "nl": "Selecteer een melding in de lijst om een beschrijving ervan weer te geven.",
        "en": "Select a message in the list to show its description.",
    },
    "no_messages": {"nl": "Geen systeemmeldingen.", "en": "No system messages."},
    "refresh": {"nl": "Vernieuwen", "en": "Refresh"},
    "col_event": {"nl": "Event", "en": "Event"},
    "col_status": {"nl": "Status", "en": "Status"},
    "col_message": {"nl": "Bericht", "en": "Message"},
    "col_activated": {"nl": "Geactiveerd", "en": "Activated"},
    "col_activated_by": {"nl": "Geactiveerd door", "en": "Activated by"},
    "col_finished": {"nl": "Voltooid", "en": "Finished"},
    "col_type": {"nl": "Type", "en": "Type"},
    "expected": {"nl": "verwacht", "en": "expected"},
    "status_queued": {"nl": "In wachtrij", "en": "Queued"},
    "status_running": {"nl": "Bezig", "en": "Running"},
    "status_finished": {"nl": "Voltooid", "en": "Finished"},
    "status_failed": {"nl": "Mislukt", "en": "Failed"},
    "status_cancelled": {"nl": "Geannuleerd", "en": "Cancelled"},
    "status_active": {"nl": "Actief", "en": "Active"},
    "scope_system": {"nl": "Hele systeem", "en": "System-wide"},
    "scope_database": {"nl": "Database", "en": "Database"},
    "scope_group": {"nl": "Groep", "en": "Group"},
    "scope_user": {"nl": "Gebruiker", "en": "User"},
}


def label(key: str, language: Language) -> str:
    """The label, or the key itself so that a missing one shows rather than breaks the page."""
    found = LABELS.get(key)
    return found[language] if found else key


def _accepted(header: str) -> list[tuple[float, int, str]]:
    ranked = []
    for position, part in enumerate(header.split(",")):
        name, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if name and quality > 0:
            ranked.append((-quality, position, name.strip().lower()))
    return sorted(ranked)


def choose(explicit: str | None, remembered: str | None, accept_language: str | None) -> Language:
    """An explicit choice wins, then the remembered one, then the best match of
    `Accept-Language` by quality and order (`nl-BE` matches `nl`), else English."""
    for candidate in (explicit, remembered):
        if candidate in _BY_NAME:
            return _BY_NAME[candidate]
    for _, _, name in _accepted(accept_language or ""):
        primary = name.split("-")[0]
        if primary in _BY_NAME:
            return _BY_NAME[primary]
    return DEFAULT
