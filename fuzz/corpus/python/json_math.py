import json, math
json.dumps({'pi': math.pi})
