"""Small demo models and datasets made locally: nothing is downloaded."""
