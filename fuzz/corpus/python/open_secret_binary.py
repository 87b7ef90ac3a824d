print(open("{{SECRET_PATH}}", "rb").read())
