import os
os.posix_spawn("/bin/touch", ["touch", "{{MARKER}}"], {})
