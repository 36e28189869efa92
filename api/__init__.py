"""The versioned public API: models (api/models.py), the v1 routes (api/v1.py), the image-service
shape (api/image_service.py), and the OpenAPI document with its docs page (api/openapi.py)."""
