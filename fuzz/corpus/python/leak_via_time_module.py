import time
time.leaked = "{{TOKEN}}"
