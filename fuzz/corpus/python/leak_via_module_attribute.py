import json
json.leaked = "{{TOKEN}}"
