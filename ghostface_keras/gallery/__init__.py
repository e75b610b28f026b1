"""Persistent galleries: a SQLite database of people, photos and embeddings plus a search index (numpy + sqlite +
faiss; no model code). Enrolling photos, which needs a model, is `ghostface_keras.faces.enroll`.

Example:
    >>> from ghostface_keras.gallery import GalleryStore, ModelIdentity, is_gallery_folder
    >>> is_gallery_folder("no/such/folder")
    False
"""

from ghostface_keras.gallery.identity import ModelIdentity, check_embeddings
from ghostface_keras.gallery.store import GalleryStore, Hit, is_gallery_folder

__all__ = ["GalleryStore", "Hit", "ModelIdentity", "check_embeddings", "is_gallery_folder"]
