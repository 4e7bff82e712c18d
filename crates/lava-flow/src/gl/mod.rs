//! OpenGL importer through headless EGL (feature `gl`): not written yet.
