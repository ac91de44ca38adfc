"""Media I/O: encode frames to MP4 (``encode``) and inspect/read videos back (``probe``)."""
