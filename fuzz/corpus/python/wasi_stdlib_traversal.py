import json
base = json.__file__.rsplit("/", 2)[0]
print(open(base + "/../../../../../../../.." + "{{SECRET_PATH}}").read())
