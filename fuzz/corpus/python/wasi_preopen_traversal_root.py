print(open("/.." + "{{SECRET_PATH}}").read())
