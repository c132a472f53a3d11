"""One router per resource; each module has ``build(settings) -> APIRouter`` so that the
documented limits (OpenAPI) are the configured ones."""
