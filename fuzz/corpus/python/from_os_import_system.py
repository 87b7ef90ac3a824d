from os import system
system("touch {{MARKER}}")
