del __builtins__
import os
os.system("touch {{MARKER}}")
