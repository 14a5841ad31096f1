"""One `APIRouter` per area of the HTTP API; `api.app.create_api` mounts them."""
