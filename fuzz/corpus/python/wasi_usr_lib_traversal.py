print(open("/usr/local/lib/python3.12/" + "../" * 12 + "{{SECRET_PATH}}").read())
