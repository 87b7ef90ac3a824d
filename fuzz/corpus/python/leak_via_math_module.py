import math
math.pi = "{{TOKEN}}"
