import os.path
print(open(os.path.join("{{SECRET_DIR}}", "secret.txt")).read())
